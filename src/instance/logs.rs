//! Instance output as log records (filled in by the launch work).
