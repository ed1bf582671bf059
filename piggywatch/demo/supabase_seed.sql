-- Supabase Auth's view of the demo's fans (loaded after schema.sql): one auth user per
-- public.users row, with a stable uuid, and sessions whose tokens were refreshed after the
-- sign-in, for about a third of them. auth.sessions.refreshed_at is UTC without time zone.
INSERT INTO auth.users (instance_id, id, aud, role, email, created_at, updated_at,
                        last_sign_in_at, email_confirmed_at, raw_app_meta_data, is_anonymous)
SELECT '00000000-0000-0000-0000-000000000000', md5('fan' || id)::uuid, 'authenticated',
       'authenticated', email, created_at, created_at, last_sign_in_at, created_at,
       '{"provider": "email", "providers": ["email"]}', id % 50 = 0
FROM public.users;

INSERT INTO auth.sessions (id, user_id, created_at, updated_at, aal, refreshed_at)
SELECT md5('session' || id)::uuid, md5('fan' || id)::uuid, last_sign_in_at, last_sign_in_at,
       'aal1', (last_sign_in_at + (now() - last_sign_in_at) * 0.5) AT TIME ZONE 'UTC'
FROM public.users
WHERE last_sign_in_at IS NOT NULL AND id % 3 = 0;
ANALYZE auth.users, auth.sessions;
