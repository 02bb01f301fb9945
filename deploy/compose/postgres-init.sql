-- Run once by the postgres image when its volume is new: Dagster's storage gets a database of its own beside the
-- results store's (POSTGRES_DB=flock), both owned by the same role.
CREATE DATABASE dagster OWNER flock;
