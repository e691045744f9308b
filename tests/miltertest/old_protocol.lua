dofile(DIR .. "/common.lua")
-- An MTA speaking milter protocol version 2 (no skipped steps, no leading space).
local conn = session(2, nil)
expect(send(conn, "alice@example.org", PLAIN, BODY), SMFIR_ACCEPT, "version 2")
if not mt.eom_check(conn, MT_HDRADD, "X-Spam-Status") then error("no X-Spam-Status") end
mt.disconnect(conn)
