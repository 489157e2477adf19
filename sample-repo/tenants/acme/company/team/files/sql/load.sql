INSERT INTO events (id, payload, loaded_at) SELECT id, payload, now() FROM staging_events;
