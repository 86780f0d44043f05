//! The trainer's gradient-sync hook over a collective, with the collective's failures turned
//! into the typed [`SyncError`] the regroup decision matches on.

use resnet_collective::Collective;
use resnet_train::{GradSync, GradWire, SyncError};

/// Adapts any [`Collective`] to the trainer's [`GradSync`] hook.
pub struct CollectiveSync(pub Box<dyn Collective>);

/// A collective's failure in the trainer's terms: a peer that went away, stalled or was
/// aborted is lost (the group re-forms without it); a malformed message is a protocol error.
pub fn sync_error(e: resnet_collective::CollectiveError) -> SyncError {
    use resnet_collective::CollectiveError as C;
    match e {
        C::Protocol { .. } => SyncError::Protocol(e.to_string()),
        C::Timeout { .. } | C::Disconnected { .. } | C::Setup(_) => {
            SyncError::PeerLost(e.to_string())
        }
        // A configuration this collective cannot serve: no other group would either.
        C::Unsupported(_) => SyncError::Local(e.to_string()),
    }
}

fn wire_of(w: GradWire) -> resnet_collective::Wire {
    match w {
        GradWire::F32 => resnet_collective::Wire::F32,
        GradWire::Bf16 => resnet_collective::Wire::Bf16,
    }
}

impl GradSync for CollectiveSync {
    fn rank(&self) -> usize {
        self.0.rank()
    }
    fn world(&self) -> usize {
        self.0.world()
    }
    fn all_reduce_mean(&mut self, buf: &mut [f32]) -> Result<(), SyncError> {
        self.0.all_reduce_mean(buf).map_err(sync_error)
    }
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), SyncError> {
        self.0.broadcast(buf, root).map_err(sync_error)
    }
    fn all_reduce_grads_mean(&mut self, buf: &mut [f32], wire: GradWire) -> Result<(), SyncError> {
        self.0
            .all_reduce_mean_wire(buf, wire_of(wire))
            .map_err(sync_error)
    }
    fn reduces_buckets(&self) -> bool {
        self.0.reduces_buckets()
    }
    fn all_reduce_bucket_mean(
        &mut self,
        bucket: &mut [f32],
        offset: usize,
        total: usize,
        wire: GradWire,
    ) -> Result<(), SyncError> {
        self.0
            .all_reduce_mean_bucket(bucket, offset, total, wire_of(wire))
            .map_err(sync_error)
    }
    #[cfg(feature = "cuda")]
    fn all_reduce_mean_device(
        &mut self,
        flat: &mut dyn std::any::Any,
    ) -> Option<Result<(), SyncError>> {
        crate::device_reduce::all_reduce_mean(&mut *self.0, flat)
    }
    #[cfg(feature = "cuda")]
    fn reduces_device_buckets(&mut self, probe: &dyn std::any::Any) -> bool {
        crate::device_reduce::takes_buckets(&mut *self.0, probe)
    }
    #[cfg(feature = "cuda")]
    fn start_device_bucket_sum(
        &mut self,
        bucket: &mut dyn std::any::Any,
        _offset: usize,
        _total: usize,
    ) -> Result<(), SyncError> {
        crate::device_reduce::start_bucket_sum(&mut *self.0, bucket)
    }
    #[cfg(feature = "cuda")]
    fn finish_device_buckets(&mut self) -> Result<(), SyncError> {
        crate::device_reduce::finish_buckets(&mut *self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use resnet_collective::CollectiveError;
    use std::time::Duration;

    #[test]
    fn lost_peers_regroup_and_local_failures_do_not() {
        let lost = [
            CollectiveError::Timeout {
                peer: 2,
                timeout: Duration::from_secs(3),
            },
            CollectiveError::Disconnected {
                peer: 1,
                detail: "connection reset".into(),
            },
            CollectiveError::Setup("rank 0 did not connect in time".into()),
        ];
        for e in lost {
            let text = e.to_string();
            let s = sync_error(e);
            assert!(
                matches!(s, SyncError::PeerLost(_)) && s.regroup_may_help(),
                "{s:?}"
            );
            assert_eq!(s.to_string(), text, "the peer's name and cause survive");
        }
        let bad = sync_error(CollectiveError::Protocol {
            peer: 1,
            detail: "frame of 3 elements, expected 4".into(),
        });
        assert!(matches!(bad, SyncError::Protocol(_)) && bad.regroup_may_help());
        assert!(bad.to_string().contains("rank 1") && bad.to_string().contains("expected 4"));
        assert!(SyncError::Regroup.regroup_may_help());
        assert!(!SyncError::Left.regroup_may_help());
        assert!(
            !SyncError::Local("reading the gradients back: device lost".into()).regroup_may_help()
        );
    }
}
