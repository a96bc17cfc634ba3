CREATE TABLE d_b (x int);
