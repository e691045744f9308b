dofile(DIR .. "/common.lua")
-- A whole session: our headers on accepted mail.
local conn = session(nil, nil)
expect(send(conn, "alice@example.org", PLAIN, BODY), SMFIR_ACCEPT, "plain message")
if not mt.eom_check(conn, MT_HDRADD, "X-Spam-Status") then error("no X-Spam-Status") end
if not mt.eom_check(conn, MT_HDRADD, "X-Gateway-Symbols") then error("no X-Gateway-Symbols") end
mt.disconnect(conn)
