dofile(DIR .. "/common.lua")
-- An MTA that may add headers but not change or remove them (no CHGHDRS): a
-- sender's forged X-Spam-Status stays, so ours are inserted at the top, above
-- it, where readers and Sieve rules look first; never appended below it.
local conn = session(nil, SMFIF_ADDHDRS + SMFIF_QUARANTINE)
local forged = {{"X-Spam-Status", "No, score=-100 forged"}, {"X-Spam-Score", "-100"}}
for _, pair in ipairs(PLAIN) do table.insert(forged, pair) end
expect(send(conn, "alice@example.org", forged, BODY), SMFIR_ACCEPT, "forged spam headers")
for _, name in ipairs({"X-Spam-Status", "X-Spam-Score", "X-Gateway-Symbols"}) do
    if mt.eom_check(conn, MT_HDRADD, name) then
        error(name .. " appended below the forged copies")
    end
    if not mt.eom_check(conn, MT_HDRINSERT, name) then error(name .. " not inserted") end
end
if not mt.eom_check(conn, MT_HDRINSERT, "X-Spam-Score", " 0.0", 0) then
    error("X-Spam-Score not inserted at index 0")
end
if mt.eom_check(conn, MT_HDRDELETE) or mt.eom_check(conn, MT_HDRCHANGE) then
    error("a header changed though the MTA does not offer it")
end
mt.disconnect(conn)
