//! Liveness decisions as pure functions of `now`: how many heartbeats a member has missed, and
//! which training member has been silent too long. `Coordinator::check_liveness_at` applies
//! them; tests call them (and it) with a chosen `now` instead of sleeping.

use std::time::{Duration, Instant};

use crate::state::Member;

/// Heartbeats missed by a member last seen at `last_seen`: the whole intervals since, less the
/// one in progress (a beat is not missed until its interval has passed).
pub(crate) fn missed_beats(last_seen: Instant, now: Instant, interval: Duration) -> u64 {
    let silent = now.saturating_duration_since(last_seen).as_secs_f64();
    ((silent / interval.as_secs_f64()) as u64).saturating_sub(1)
}

/// The first member, by rank, that is still training (`finished[rank]` is `None`) and has been
/// silent longer than `timeout`: its rank and the reason to give.
pub(crate) fn silent_member<T>(
    members: &[Member],
    finished: &[Option<T>],
    now: Instant,
    timeout: Duration,
) -> Option<(usize, String)> {
    members
        .iter()
        .enumerate()
        .filter(|(i, _)| finished.get(*i).is_some_and(Option::is_none))
        .map(|(i, m)| (i, m, now.saturating_duration_since(m.last_seen)))
        .find(|(_, _, silent)| *silent > timeout)
        .map(|(i, m, silent)| {
            (
                i,
                format!(
                    "worker '{}' (rank {i}) sent no heartbeat for {silent:.0?}",
                    m.worker_id
                ),
            )
        })
}

/// Whether the rendezvous has run out of time: still waiting for the group `join_timeout`
/// after the coordinator started.
pub(crate) fn rendezvous_expired(started: Instant, now: Instant, join_timeout: Duration) -> bool {
    now.saturating_duration_since(started) > join_timeout
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, last_seen: Instant) -> Member {
        Member {
            worker_id: id.into(),
            data_addr: "127.0.0.1:1".into(),
            device: "cpu".into(),
            nccl_id: Vec::new(),
            last_seen,
            step: 0,
            loss: 0.0,
            images_per_sec: 0.0,
            misses: 0,
        }
    }

    #[test]
    fn a_beat_is_missed_only_once_its_interval_has_passed() {
        let t0 = Instant::now();
        let i = Duration::from_secs(2);
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(missed_beats(t0, at(0), i), 0);
        assert_eq!(missed_beats(t0, at(3_999), i), 0);
        assert_eq!(missed_beats(t0, at(4_000), i), 1);
        assert_eq!(missed_beats(t0, at(10_500), i), 4);
        // A clock reading before the last beat (a heartbeat raced the check) is no silence.
        assert_eq!(missed_beats(at(5_000), t0, i), 0);
    }

    #[test]
    fn the_first_silent_training_member_is_named_and_finished_ones_are_not() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(10);
        let members = [
            member("a", t0),
            member("b", t0 + Duration::from_secs(5)),
            member("c", t0),
        ];
        let training: [Option<()>; 3] = [None, None, None];
        let now = t0 + Duration::from_secs(10);
        assert_eq!(silent_member(&members, &training, now, timeout), None);
        let now = t0 + Duration::from_secs(12);
        let (rank, why) = silent_member(&members, &training, now, timeout).expect("silent");
        assert_eq!(rank, 0);
        assert_eq!(why, "worker 'a' (rank 0) sent no heartbeat for 12s");
        // Rank 0 has finished (a finished worker stops beating): rank 2 is the one.
        let finished = [Some(()), None, None];
        assert_eq!(
            silent_member(&members, &finished, now, timeout).map(|s| s.0),
            Some(2)
        );
        // b, seen 5 s later, is silent only from 15 s on.
        let all_but_b = [Some(()), None, Some(())];
        assert_eq!(silent_member(&members, &all_but_b, now, timeout), None);
        let later = t0 + Duration::from_secs(16);
        assert_eq!(
            silent_member(&members, &all_but_b, later, timeout).map(|s| s.0),
            Some(1)
        );
    }

    #[test]
    fn the_rendezvous_expires_after_the_join_timeout() {
        let t0 = Instant::now();
        let d = Duration::from_secs(300);
        assert!(!rendezvous_expired(t0, t0 + d, d));
        assert!(rendezvous_expired(t0, t0 + d + Duration::from_millis(1), d));
    }
}
