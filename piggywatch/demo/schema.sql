-- PiggyBong-like demo database (a K-pop fan app on a Supabase-style backend).
-- Loaded by ThrowawayCluster.bootstrap_demo() into a fresh database, so serial ids start
-- at 1 and the seed data below can reference them directly.

-- Loaded after supabase.sql: pg_stat_statements is in schema extensions, as on Supabase.

CREATE TABLE users (
    id              bigserial PRIMARY KEY,
    email           text NOT NULL UNIQUE,
    display_name    text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_sign_in_at timestamptz,
    plan            text NOT NULL DEFAULT 'free' CHECK (plan IN ('free', 'premium', 'vip'))
);
CREATE INDEX users_created_at_idx ON users (created_at);
CREATE INDEX users_last_sign_in_at_idx ON users (last_sign_in_at);

CREATE TABLE artists (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    agency     text NOT NULL,
    debut_date date NOT NULL
);

CREATE TABLE purchases (
    id           bigserial PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES users (id),
    artist_id    bigint NOT NULL REFERENCES artists (id),
    amount_cents integer NOT NULL CHECK (amount_cents > 0),
    currency     text NOT NULL DEFAULT 'USD',
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX purchases_user_id_created_at_idx ON purchases (user_id, created_at DESC);
CREATE INDEX purchases_artist_id_idx ON purchases (artist_id);
CREATE INDEX purchases_created_at_idx ON purchases (created_at);

CREATE TABLE news (
    id           bigserial PRIMARY KEY,
    artist_id    bigint NOT NULL REFERENCES artists (id),
    title        text NOT NULL,
    body         text NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX news_artist_id_published_at_idx ON news (artist_id, published_at DESC);
CREATE INDEX news_published_at_idx ON news (published_at DESC);

CREATE TABLE edge_functions_logs (
    id            bigserial PRIMARY KEY,
    function_name text NOT NULL,
    duration_ms   double precision NOT NULL,
    status_code   integer NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX edge_functions_logs_created_at_idx ON edge_functions_logs (created_at);
CREATE INDEX edge_functions_logs_function_name_created_at_idx
    ON edge_functions_logs (function_name, created_at);

-- Seed data: fixed seed so every demo starts from the same shape.
SELECT setseed(0.42);

-- 50 fictional groups: 10 names x 5 suffixes.
INSERT INTO artists (name, agency, debut_date)
SELECT (ARRAY['Aurora', 'Blossom', 'Comet', 'Daydream', 'Ember',
              'Fable', 'Galaxy', 'Halo', 'Iris', 'Jewel'])[1 + (g - 1) % 10]
       || ' ' || (ARRAY['Girls', 'Boys', 'Crew', 'Unit', 'X'])[1 + (g - 1) / 10],
       (ARRAY['Starship Ent.', 'Moonlight Music', 'Neon Label', 'Pixel Agency'])[1 + g % 4],
       date '2012-01-01' + (g * 97) % 4000
FROM generate_series(1, 50) AS g;

INSERT INTO users (email, display_name, created_at, last_sign_in_at, plan)
SELECT 'fan' || g || '@example.com',
       'fan' || g,
       created_at,
       CASE WHEN random() < 0.8 THEN created_at + (now() - created_at) * random() END,
       CASE WHEN r < 0.03 THEN 'vip' WHEN r < 0.15 THEN 'premium' ELSE 'free' END
FROM (
    SELECT g, now() - random() * interval '60 days' AS created_at, random() AS r
    FROM generate_series(1, 2000) AS g
) AS seed;

INSERT INTO purchases (user_id, artist_id, amount_cents, currency, created_at)
SELECT 1 + floor(random() * 2000)::int,
       1 + floor(random() * 50)::int,
       (ARRAY[499, 999, 1499, 2999, 4999])[1 + floor(random() * 5)::int],
       (ARRAY['USD', 'USD', 'USD', 'KRW', 'JPY'])[1 + floor(random() * 5)::int],
       now() - random() * interval '60 days'
FROM generate_series(1, 5000);

INSERT INTO news (artist_id, title, body, published_at)
SELECT 1 + g % 50,
       (ARRAY['Comeback teaser', 'Concert tour dates', 'New single out', 'Fan meeting',
              'Variety show appearance'])[1 + g % 5] || ' #' || g,
       repeat('Fans are excited about the latest update. ', 5 + g % 20),
       now() - random() * interval '90 days'
FROM generate_series(1, 500) AS g;

-- Durations are exponential-ish around ~60 ms; about 2% of calls end in a 5xx.
INSERT INTO edge_functions_logs (function_name, duration_ms, status_code, created_at)
SELECT (ARRAY['auth-signin', 'auth-signup', 'news-feed', 'artist-news', 'purchase-checkout',
              'purchase-history', 'push-notify'])[1 + floor(random() * 7)::int],
       round((15 - ln(1 - random()) * 50)::numeric, 2),
       CASE WHEN r < 0.02 THEN (ARRAY[500, 502, 503, 504])[1 + floor(random() * 4)::int]
            WHEN r < 0.05 THEN (ARRAY[400, 401, 404, 429])[1 + floor(random() * 4)::int]
            ELSE 200 END,
       now() - random() * interval '7 days'
FROM (SELECT random() AS r FROM generate_series(1, 10000)) AS seed;

ANALYZE users, artists, purchases, news, edge_functions_logs;
