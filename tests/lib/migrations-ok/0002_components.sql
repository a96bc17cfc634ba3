CREATE TABLE m_components (
  id      text PRIMARY KEY,
  page_id text NOT NULL REFERENCES m_pages(id),
  name    text NOT NULL
);
CREATE INDEX m_components_page ON m_components(page_id);
