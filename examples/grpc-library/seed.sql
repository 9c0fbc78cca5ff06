-- 400 books by 40 authors, deterministic (the same rows on every run). Safe to run twice.

WITH authors(i, name) AS (
  SELECT ordinality - 1, name FROM unnest(ARRAY[
    'Jane Austen', 'Charlotte Bronte', 'Emily Bronte', 'Lewis Carroll', 'Joseph Conrad',
    'Charles Dickens', 'Arthur Conan Doyle', 'George Eliot', 'Thomas Hardy', 'Henry James',
    'Rudyard Kipling', 'Jack London', 'Herman Melville', 'Edgar Allan Poe', 'Mary Shelley',
    'Robert Louis Stevenson', 'Bram Stoker', 'Leo Tolstoy', 'Mark Twain', 'Jules Verne',
    'H. G. Wells', 'Edith Wharton', 'Oscar Wilde', 'Virginia Woolf', 'Fyodor Dostoevsky',
    'Gustave Flaubert', 'Victor Hugo', 'Alexandre Dumas', 'Anton Chekhov', 'Nikolai Gogol',
    'Ivan Turgenev', 'Honore de Balzac', 'Emile Zola', 'Stendhal', 'Miguel de Cervantes',
    'Johann Wolfgang von Goethe', 'Nathaniel Hawthorne', 'Elizabeth Gaskell', 'Anthony Trollope',
    'Wilkie Collins'
  ]) WITH ORDINALITY AS t(name, ordinality)
),
adjectives(i, word) AS (
  SELECT ordinality - 1, word FROM unnest(ARRAY[
    'Silent', 'Crimson', 'Distant', 'Forgotten', 'Golden', 'Hidden', 'Last', 'Northern',
    'Quiet', 'Restless', 'Secret', 'Winter', 'Wandering', 'Broken', 'Burning', 'Patient',
    'Lonely', 'Open', 'Narrow', 'Endless'
  ]) WITH ORDINALITY AS t(word, ordinality)
),
nouns(i, word) AS (
  SELECT ordinality - 1, word FROM unnest(ARRAY[
    'River', 'House', 'Garden', 'Letters', 'Voyage', 'Harbour', 'Island', 'Road', 'Winter',
    'Mirror', 'Orchard', 'Station', 'Tower', 'Inheritance', 'Frontier', 'Lantern', 'Valley',
    'Storm', 'Bridge', 'Season'
  ]) WITH ORDINALITY AS t(word, ordinality)
)
INSERT INTO books (id, title, author, year, copies, available)
SELECT g,
       'The ' || a.word || ' ' || n.word || CASE WHEN g > 200 THEN ' (Volume II)' ELSE '' END,
       au.name,
       1800 + (g * 37) % 120,
       1 + g % 5,
       1 + g % 5
FROM generate_series(1, 400) AS g
JOIN authors au ON au.i = g % 40
JOIN adjectives a ON a.i = (g / 20) % 20
JOIN nouns n ON n.i = g % 20
ON CONFLICT (id) DO NOTHING;
