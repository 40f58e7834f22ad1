//! Live sessions per application and policy ([`SessionStore::live_counts`]).
//!
//! Nothing indexes sessions by application or policy (an index would cost memory on every
//! session, and memory is what a large deployment pays for), so the count walks every tag's
//! subject entries, as `application_sessions` does, and reads the records they name. The server
//! calls it on an interval, never per request.
//!
//! [`SessionStore::live_counts`]: portcullis_core::SessionStore::live_counts

use portcullis_core::{LiveCount, LiveTally, StoreError, record};

use crate::{RedisStore, WALK_BATCH};

impl RedisStore {
    /// Counts every live session by application and policy: per tag, its subjects' entries
    /// ([`RedisStore::tag_members`]), then its records by `MGET`s of [`WALK_BATCH`] (every key
    /// of one tag shares its slot, so this holds in a Cluster too).
    pub(crate) async fn count_live(&self) -> Result<Vec<LiveCount>, StoreError> {
        let mut tally = LiveTally::default();
        for route in 0..=u8::MAX {
            let members = self.tag_members(route).await?;
            for batch in members.chunks(WALK_BATCH) {
                let mut mget = redis::cmd("MGET");
                for hash in batch {
                    mget.arg(self.session_key(hash));
                }
                let records: Vec<Option<Vec<u8>>> = self.query(&mget).await?;
                for (hash, record) in batch.iter().zip(records) {
                    // A record deleted behind the store's back: `list_subject` drops its entry.
                    let Some(bytes) = record else { continue };
                    tally.add(&record::decode(*hash, &bytes)?);
                }
            }
        }
        Ok(tally.into_counts())
    }
}
