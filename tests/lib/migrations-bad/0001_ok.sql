CREATE TABLE b_ok (x int);
