-- Version 10 sorts after 2 numerically (but before it as text): it needs
-- both tables, so applying it out of order fails.
INSERT INTO m_pages VALUES ('p1', 'Page one');
INSERT INTO m_components VALUES ('c1', 'p1', 'API');
