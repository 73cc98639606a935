//! Placeholder with the agreed API; replaced by the process work.
pub struct Cgroup;
impl Cgroup {
    pub fn reset_peak(&self) {}
    pub fn peak_bytes(&self) -> Option<u64> {
        None
    }
}
