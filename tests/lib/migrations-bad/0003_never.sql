CREATE TABLE b_never (x int);
