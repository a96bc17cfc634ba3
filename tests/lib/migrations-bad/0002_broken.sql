CREATE TABLE b_half (x int);
INSERT INTO b_half VALUES (1);
INSERT INTO b_missing VALUES (1);
