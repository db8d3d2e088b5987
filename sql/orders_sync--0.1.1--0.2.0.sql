-- orders_sync 0.1.1 -> 0.2.0: run with ALTER EXTENSION orders_sync UPDATE TO '0.2.0'.
\echo Use "ALTER EXTENSION orders_sync UPDATE TO '0.2.0'" to load this file. \quit

-- Each change below also lives in the install scripts (sql/*.sql); the catalog-diff upgrade
-- test (pg_test/tests/install.rs) compares "install 0.2.0" with "install 0.1.x, update".
