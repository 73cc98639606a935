//! Spawning and supervising instance processes (filled in by the launch work).
