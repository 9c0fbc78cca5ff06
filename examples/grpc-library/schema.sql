-- The library catalog: books and loans. Safe to run twice.

CREATE TABLE IF NOT EXISTS books (
  id        integer PRIMARY KEY,
  title     text    NOT NULL,
  author    text    NOT NULL,
  year      integer NOT NULL,
  copies    integer NOT NULL CHECK (copies >= 0),
  available integer NOT NULL CHECK (available >= 0 AND available <= copies)
);
CREATE INDEX IF NOT EXISTS books_author_idx ON books (author);

-- A loan's id is chosen by the client (a UUID): a POST retried after an unknown outcome
-- (a failover, E_COMMIT_UNKNOWN) finds its own row instead of lending the book twice.
CREATE TABLE IF NOT EXISTS loans (
  id          uuid        PRIMARY KEY,
  book_id     integer     NOT NULL REFERENCES books (id),
  member      text        NOT NULL,
  loaned_at   timestamptz NOT NULL DEFAULT now(),
  returned_at timestamptz
);
CREATE INDEX IF NOT EXISTS loans_book_idx ON loans (book_id) WHERE returned_at IS NULL;
