-- First migration: pages.
CREATE TABLE m_pages (
  id   text PRIMARY KEY,
  name text NOT NULL
);
