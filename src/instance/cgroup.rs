//! Per-instance memory cgroups (filled in by the launch work).
