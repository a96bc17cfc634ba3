CREATE TABLE d_a (x int);
