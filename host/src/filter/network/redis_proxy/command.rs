//! Envoy's command sets: how each supported command is routed and answered.

/// How a command is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Routed by its first argument (the key).
    Simple,
    /// EVAL/EVALSHA: routed by the first key after `numkeys`.
    Eval,
    /// MGET: one GET per key, results merged into an array.
    Mget,
    /// MSET: one SET per key/value pair, OK if all were.
    Mset,
    /// DEL, EXISTS, TOUCH, UNLINK: one per key, integer results summed.
    SumPerKey,
    Ping,
    Echo,
    Time,
    Quit,
    Auth,
    /// MULTI, EXEC, DISCARD, WATCH, UNWATCH: a transaction pinned to the
    /// shard of its first key, on a connection of its own.
    Transaction,
}

/// Commands routed on their first key, as Envoy's `simpleCommands`.
const SIMPLE: &[&str] = &[
    "append",
    "bitcount",
    "bitfield",
    "bitpos",
    "decr",
    "decrby",
    "dump",
    "expire",
    "expireat",
    "geoadd",
    "geodist",
    "geohash",
    "geopos",
    "georadius_ro",
    "georadiusbymember_ro",
    "get",
    "getbit",
    "getdel",
    "getex",
    "getrange",
    "getset",
    "hdel",
    "hexists",
    "hget",
    "hgetall",
    "hincrby",
    "hincrbyfloat",
    "hkeys",
    "hlen",
    "hmget",
    "hmset",
    "hscan",
    "hset",
    "hsetnx",
    "hstrlen",
    "hvals",
    "incr",
    "incrby",
    "incrbyfloat",
    "lindex",
    "linsert",
    "llen",
    "lmove",
    "lpop",
    "lpush",
    "lpushx",
    "lrange",
    "lrem",
    "lset",
    "ltrim",
    "persist",
    "pexpire",
    "pexpireat",
    "pfadd",
    "pfcount",
    "psetex",
    "pttl",
    "publish",
    "restore",
    "rpop",
    "rpush",
    "rpushx",
    "sadd",
    "scard",
    "set",
    "setbit",
    "setex",
    "setnx",
    "setrange",
    "sismember",
    "smembers",
    "spop",
    "srandmember",
    "srem",
    "sscan",
    "strlen",
    "ttl",
    "type",
    "xack",
    "xadd",
    "xautoclaim",
    "xclaim",
    "xdel",
    "xlen",
    "xpending",
    "xrange",
    "xrevrange",
    "xtrim",
    "zadd",
    "zcard",
    "zcount",
    "zincrby",
    "zlexcount",
    "zpopmax",
    "zpopmin",
    "zrange",
    "zrangebylex",
    "zrangebyscore",
    "zrank",
    "zrem",
    "zremrangebylex",
    "zremrangebyrank",
    "zremrangebyscore",
    "zrevrange",
    "zrevrangebylex",
    "zrevrangebyscore",
    "zrevrank",
    "zscan",
    "zscore",
];

/// Commands that only read, for `request_mirror_policy.exclude_read_commands`.
const READS: &[&str] = &[
    "bitcount",
    "bitpos",
    "dump",
    "exists",
    "geodist",
    "geohash",
    "geopos",
    "georadius_ro",
    "georadiusbymember_ro",
    "get",
    "getbit",
    "getrange",
    "hexists",
    "hget",
    "hgetall",
    "hkeys",
    "hlen",
    "hmget",
    "hscan",
    "hstrlen",
    "hvals",
    "lindex",
    "llen",
    "lrange",
    "mget",
    "pfcount",
    "pttl",
    "scard",
    "sismember",
    "smembers",
    "srandmember",
    "sscan",
    "strlen",
    "ttl",
    "type",
    "xlen",
    "xpending",
    "xrange",
    "xrevrange",
    "zcard",
    "zcount",
    "zlexcount",
    "zrange",
    "zrangebylex",
    "zrangebyscore",
    "zrank",
    "zrevrange",
    "zrevrangebylex",
    "zrevrangebyscore",
    "zrevrank",
    "zscan",
    "zscore",
];

/// Classifies a lower-cased command name; `None` for what wasp does not proxy.
pub fn kind(name: &str) -> Option<Kind> {
    Some(match name {
        "eval" | "evalsha" => Kind::Eval,
        "mget" => Kind::Mget,
        "mset" => Kind::Mset,
        "del" | "exists" | "touch" | "unlink" => Kind::SumPerKey,
        "ping" => Kind::Ping,
        "echo" => Kind::Echo,
        "time" => Kind::Time,
        "quit" => Kind::Quit,
        "auth" => Kind::Auth,
        "multi" | "exec" | "discard" | "watch" | "unwatch" => Kind::Transaction,
        n if SIMPLE.binary_search(&n).is_ok() => Kind::Simple,
        _ => return None,
    })
}

pub fn is_read(name: &str) -> bool {
    READS.binary_search(&name).is_ok()
}

/// The smallest argument count (with the command itself) each kind takes.
pub fn min_args(kind: Kind) -> usize {
    match kind {
        Kind::Simple | Kind::Mget | Kind::SumPerKey | Kind::Echo | Kind::Auth => 2,
        Kind::Eval => 4,
        Kind::Mset => 3,
        Kind::Ping | Kind::Time | Kind::Quit | Kind::Transaction => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_for_binary_search() {
        assert!(SIMPLE.windows(2).all(|w| w[0] < w[1]));
        assert!(READS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn commands_classify() {
        assert_eq!(kind("get"), Some(Kind::Simple));
        assert_eq!(kind("zscore"), Some(Kind::Simple));
        assert_eq!(kind("mget"), Some(Kind::Mget));
        assert_eq!(kind("unlink"), Some(Kind::SumPerKey));
        assert_eq!(kind("keys"), None);
        assert!(is_read("get") && !is_read("set"));
    }
}
