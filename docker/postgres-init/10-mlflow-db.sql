-- Run once by the postgres image when its volume is first initialised (as POSTGRES_USER, who owns it).
-- POSTGRES_DB creates `optuna` (the studies); this adds `mlflow` (the tracking server's tables).
CREATE DATABASE mlflow;
