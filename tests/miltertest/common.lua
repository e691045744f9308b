-- Shared by the scripts: SOCKET is given with -D SOCKET=unix:/path.
function session(version, actions)
    local conn = mt.connect(SOCKET, 20, 0.25)
    if conn == nil then error("cannot connect to " .. SOCKET) end
    if version ~= nil or actions ~= nil then
        -- miltertest takes (conn, version, protocol options, actions), whatever
        -- its manual page says about the order.
        local problem = mt.negotiate(conn, version, nil, actions)
        if problem ~= nil then error("negotiate: " .. problem) end
    end
    if mt.conninfo(conn, "mail.example.org", "198.51.100.7") ~= nil then
        error("conninfo failed")
    end
    if mt.helo(conn, "mail.example.org") ~= nil then error("helo failed") end
    return conn
end

function send(conn, sender, headers, body)
    mt.macro(conn, SMFIC_MAIL, "i", "MT" .. tostring(math.random(100000, 999999)))
    if mt.mailfrom(conn, "<" .. sender .. ">") ~= nil then error("mailfrom failed") end
    if mt.rcptto(conn, "<bob@example.net>") ~= nil then error("rcptto failed") end
    for _, pair in ipairs(headers) do
        if mt.header(conn, pair[1], pair[2]) ~= nil then error("header failed") end
    end
    if mt.eoh(conn) ~= nil then error("eoh failed") end
    if mt.bodystring(conn, body) ~= nil then error("body failed") end
    if mt.eom(conn) ~= nil then error("eom failed") end
    return mt.getreply(conn)
end

PLAIN = {
    {"From", "Alice <alice@example.org>"}, {"To", "bob@example.net"},
    {"Subject", "Lunch"}, {"Date", "Tue, 24 Nov 2026 09:12:44 +0000"},
    {"Message-ID", "<1@example.org>"},
}
BODY = "See you on Thursday.\r\n"

function expect(got, wanted, what)
    if got ~= wanted then
        error(what .. ": got reply " .. tostring(got) .. ", wanted " .. tostring(wanted))
    end
end
