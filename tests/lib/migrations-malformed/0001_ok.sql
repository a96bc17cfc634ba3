CREATE TABLE mf_ok (x int);
