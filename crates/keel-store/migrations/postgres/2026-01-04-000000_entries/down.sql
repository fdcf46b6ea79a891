DROP TABLE IF EXISTS write_behind_dead_letters; DROP TABLE IF EXISTS entries;
