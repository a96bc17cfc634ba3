CREATE TABLE mf_short (x int);
