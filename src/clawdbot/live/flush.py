"""How the reply logs' mirror sends a flush: one Lua script run with all of it (mirror.py fills it)."""

from __future__ import annotations

from redis.typing import EncodableT, FieldT

# One flush is one script run: atomic as MULTI … EXEC was, but one command to send and one reply to read instead of
# two per command (redis-py's pipeline costs ~25 µs of the gateway's CPU per command; a busy flush has dozens).
# ARGV[1] holds the new stream entries, a line each (`<key index> <seq>-0 <event>`: an event is JSON, which has
# no raw newline), so a token costs one line rather than four arguments; ARGV[2] the keys to delete first (a
# reply Redis lost, written again whole); then the other operations in order, each a letter and its arguments,
# keys named by their index in KEYS. An XADD of a seq the stream has is no error (a retried flush whose first try
# got through); other refusals are returned, with the answers of the HEXISTS checks and the number of channel
# messages left unsent. A channel's message goes out only if some other process listens: PUBSUB NUMSUB counts the
# sender itself where it is subscribed (it says so), and a writer whose tabs are all its own would otherwise be
# sent back every event it wrote, only to drop it. Counted in the run, this is exact: a process that subscribes
# reads the stream after its subscription is in place, and every run after that sees it.
FLUSH = """
local refused, found, unheard = {}, {}, 0
for index in string.gmatch(ARGV[2], '%d+') do
  redis.call('DEL', KEYS[tonumber(index)])
end
for index, ident, data in string.gmatch(ARGV[1], '(%d+) (%S+) ([^\\n]*)') do
  local done = redis.pcall('XADD', KEYS[tonumber(index)], ident, 'd', data)
  if type(done) == 'table' and done.err and not string.find(done.err, 'equal or smaller') then
    refused[#refused + 1] = done.err
  end
end
local i, n = 3, #ARGV
while i <= n do
  local op, key = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
  if op == 'H' then
    local count = tonumber(ARGV[i + 2])
    redis.call('HSET', key, unpack(ARGV, i + 3, i + 2 + count * 2))
    i = i + 3 + count * 2
  elseif op == 'Q' then
    found[#found + 1] = redis.call('HEXISTS', key, ARGV[i + 2])
    i = i + 3
  elseif op == 'T' then
    redis.call('XTRIM', key, 'MINID', '~', ARGV[i + 2])
    i = i + 3
  elseif op == 'E' then
    redis.call('EXPIRE', key, ARGV[i + 2])
    i = i + 3
  else
    if redis.call('PUBSUB', 'NUMSUB', ARGV[i + 1])[2] > tonumber(ARGV[i + 2]) then
      redis.call('PUBLISH', ARGV[i + 1], ARGV[i + 3])
    else
      unheard = unheard + 1
    end
    i = i + 4
  end
end
return {refused, found, unheard}
"""


class Ops:
    """A flush's commands, as the flush script's KEYS and ARGV (the method names are redis-py's, for reading)."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.entries: list[bytes] = []
        self.deletes: list[bytes] = []
        self.args: list[EncodableT] = [b"", b""]  # the entries' lines and the keys to delete go first
        self.checks = 0
        self._index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.entries) + len(self.deletes) + len(self.args) - 2

    def done(self) -> list[EncodableT]:
        self.args[0], self.args[1] = b"\n".join(self.entries), b" ".join(self.deletes)
        return self.args

    def delete(self, *keys: str) -> None:
        self.deletes += [b"%d" % self._key(key) for key in keys]

    def hexists(self, key: str, field_: str) -> int:
        """Ask whether the hash has the field; the answer's place among the flush's answers."""
        self.args += [b"Q", self._key(key), field_]
        self.checks += 1
        return self.checks - 1

    def _key(self, key: str) -> int:
        index = self._index.get(key)
        if index is None:
            self.keys.append(key)
            index = self._index[key] = len(self.keys)
        return index

    def xadd(self, stream: str, data: bytes, ident: str) -> None:
        self.entries.append(b"%d %s %b" % (self._key(stream), ident.encode(), data))

    def hset(self, key: str, mapping: dict[FieldT, EncodableT]) -> None:
        self.args += [b"H", self._key(key), len(mapping)]
        for field_, value in mapping.items():
            self.args += [field_, value]

    def xtrim(self, stream: str, minid: str) -> None:
        self.args += [b"T", self._key(stream), minid]

    def expire(self, key: str, seconds: int) -> None:
        self.args += [b"E", self._key(key), seconds]

    def publish(self, to: bytes, data: bytes, mine: bool) -> None:
        """Send `data` on channel `to` if a process other than this one listens (`mine`: this one does)."""
        self.args += [b"P", to, 1 if mine else 0, data]

    def route(self, key: str) -> None:
        """Name a key the run does not touch, so that on a Redis Cluster it runs on the node of that key's slot."""
        self._key(key)
