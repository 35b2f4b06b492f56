//! The scheduler role: leader election, due-renewal scans and cron.
//!
//! Not built yet: issue #3 adds it. The crate exists so the workspace has its final shape
//! and `warren scheduler` has a home.
