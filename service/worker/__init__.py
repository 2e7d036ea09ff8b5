"""Workers: claim queued jobs and exports from the database and run them (all model work happens here)."""
