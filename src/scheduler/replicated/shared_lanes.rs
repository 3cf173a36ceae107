//! The replicas' connection to the shared lanes in Redis: one read of
//! everything a decision needs, and one compare-and-set commit.
//!
//! The names, the stored forms of key states and the mode, and the Redis
//! helpers are the store's (`crate::store::redis`), so the ledger's Redis
//! backend and this connection agree on them; only the lanes are read and
//! written here, and only here.

use crate::keys::KeyState;
use crate::policy::Mode;
use crate::store::StoreError;
use crate::store::redis::{Names, TIMEOUT, client, parse_key_states, parse_mode, unusable};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, RedisError, Value};
use std::collections::HashMap;
use std::time::Duration;

/// Lanes outlive their last write by the learned limits' lifetime and a day.
const LANE_TTL: Duration = Duration::from_secs(8 * 86_400);

/// A lane's name in Redis: (key id, model).
pub type LaneId = (String, String);

/// What one read of the shared state returns.
#[derive(Debug)]
pub struct View {
    pub epoch: Option<String>,
    /// (mode, the configured mode it overrode).
    pub mode: Option<(Mode, Mode)>,
    pub key_states: HashMap<String, KeyState>,
    /// The lanes asked for, in order, each with its version (0: never
    /// written) and its state as the scheduler wrote it (`None`: never written).
    pub lanes: Vec<(u64, Option<String>)>,
}

/// The replicated scheduler's connection: reads lanes, commits the lanes a
/// decision changed against the versions it read, and publishes operator
/// changes.
pub struct SharedLanes {
    conn: ConnectionManager,
    names: Names,
    commit: redis::Script,
}

fn parse<T: FromRedisValue>(value: Value) -> Result<T, RedisError> {
    T::from_redis_value(value).map_err(RedisError::from)
}

impl SharedLanes {
    /// Connects (failing at once if Redis does not answer). The connection
    /// reconnects by itself after Redis comes back.
    pub async fn connect(url: &str, prefix: &str) -> Result<SharedLanes, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_with_config(client(url)?, config)
            .await
            .map_err(|e| unusable(url, &e))?;
        Ok(SharedLanes {
            conn,
            names: Names::new(prefix),
            commit: redis::Script::new(include_str!("commit_lanes.lua")),
        })
    }

    fn lane(&self, (key_id, model): &LaneId) -> String {
        self.names.lane(key_id, model)
    }

    /// Reads the epoch, the mode, the key states and `lanes`, all at one
    /// instant (one MULTI/EXEC).
    pub async fn read(&mut self, lanes: &[LaneId]) -> Result<View, RedisError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .get(self.names.epoch())
            .get(self.names.mode())
            .hgetall(self.names.keys());
        for lane in lanes {
            pipe.cmd("HMGET").arg(self.lane(lane)).arg("v").arg("state");
        }
        let mut values: Vec<Value> = pipe.query_async(&mut self.conn).await?;
        let lane_values = values.split_off(3);
        let mut head = values.into_iter();
        let mut next = || head.next().unwrap_or(Value::Nil);
        let epoch: Option<String> = parse(next())?;
        let mode = parse_mode(parse(next())?);
        let key_states = parse_key_states(parse(next())?);
        let lanes = lane_values
            .into_iter()
            .map(|value| {
                let (version, state): (Option<u64>, Option<String>) = parse(value)?;
                Ok((version.unwrap_or(0), state))
            })
            .collect::<Result<_, RedisError>>()?;
        Ok(View {
            epoch,
            mode,
            key_states,
            lanes,
        })
    }

    /// Writes each `(i, state)` of `writes` as the new state of lane
    /// `read[i].0`, if no lane in `read` has moved from the version read.
    /// `Ok(false)`: one had, and nothing was written.
    pub async fn commit(
        &mut self,
        read: &[(LaneId, u64)],
        writes: &[(usize, String)],
    ) -> Result<bool, RedisError> {
        let mut call = self.commit.prepare_invoke();
        for (id, _) in read {
            call.key(self.lane(id));
        }
        for (_, version) in read {
            call.arg(*version);
        }
        call.arg(LANE_TTL.as_millis() as u64);
        for (i, state) in writes {
            call.arg(i + 1).arg(state);
        }
        let written: i64 = call.invoke_async(&mut self.conn).await?;
        Ok(written == 1)
    }

    pub async fn set_key_state(
        &mut self,
        key_id: &str,
        state: &KeyState,
    ) -> Result<(), RedisError> {
        self.names
            .set_key_state(key_id, state)
            .query_async(&mut self.conn)
            .await
    }

    pub async fn set_mode(&mut self, mode: Mode, configured: Mode) -> Result<(), RedisError> {
        self.names
            .set_mode(mode, configured)
            .query_async(&mut self.conn)
            .await
    }

    /// Writes a new epoch unless one exists, and returns the one in force.
    pub async fn claim_epoch(&mut self) -> Result<String, RedisError> {
        let fresh = format!("{:016x}", rand::random::<u64>());
        let (epoch,): (String,) = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(self.names.epoch())
            .arg(&fresh)
            .arg("NX")
            .ignore()
            .get(self.names.epoch())
            .query_async(&mut self.conn)
            .await?;
        Ok(epoch)
    }
}
