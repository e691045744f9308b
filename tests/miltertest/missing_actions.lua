dofile(DIR .. "/common.lua")
-- An MTA that offers no header actions and no quarantine: the verdict still
-- applies, without headers; never a 451 loop.
local conn = session(nil, SMFIF_ADDRCPT)
expect(send(conn, "alice@example.org", PLAIN, BODY), SMFIR_ACCEPT, "no header actions")
if mt.eom_check(conn, MT_HDRADD) then error("a header was added though not offered") end
expect(send(conn, "bulk@spammer.example", PLAIN, BODY), SMFIR_REPLYCODE, "blocked sender")
-- Held mail (here: no Date) cannot be held by this MTA: rejected, not 451.
local undated = {{"From", "Alice <alice@example.org>"}, {"Subject", "x"}}
expect(send(conn, "alice@example.org", undated, BODY), SMFIR_REPLYCODE, "cannot hold")
mt.disconnect(conn)
