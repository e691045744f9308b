dofile(DIR .. "/common.lua")
-- One connection: an aborted message, then a good one, then a blocked sender.
local conn = session(nil, nil)
if mt.mailfrom(conn, "<alice@example.org>") ~= nil then error("mailfrom failed") end
if mt.rcptto(conn, "<bob@example.net>") ~= nil then error("rcptto failed") end
if mt.header(conn, "Subject", "half a message") ~= nil then error("header failed") end
if mt.abort(conn) ~= nil then error("abort failed") end
expect(send(conn, "alice@example.org", PLAIN, BODY), SMFIR_ACCEPT, "after an abort")
if not mt.eom_check(conn, MT_HDRADD, "X-Spam-Status") then error("no X-Spam-Status") end
expect(send(conn, "bulk@spammer.example", PLAIN, BODY), SMFIR_REPLYCODE, "blocked sender")
expect(send(conn, "alice@example.org", PLAIN, BODY), SMFIR_ACCEPT, "judged on its own")
mt.disconnect(conn)
