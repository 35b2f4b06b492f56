//! Cron schedules (being written).
