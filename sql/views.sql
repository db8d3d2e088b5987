-- Typed views per stream over orders_sync.records.

CREATE VIEW orders_sync.td_orders AS
SELECT r.store_code, r.record_id, r.record_date, r.amount, r.payload, r.synced_at
FROM orders_sync.records r
JOIN orders_sync.pipelines p ON p.id = r.pipeline_id
WHERE p.code = 'td_orders_sync' AND r.stream = 'orders';

COMMENT ON VIEW orders_sync.td_orders IS 'Orders of the TD pipeline (stream orders).';

CREATE VIEW orders_sync.td_sales AS
SELECT r.store_code, r.record_id, r.record_date, r.amount, r.payload, r.synced_at
FROM orders_sync.records r
JOIN orders_sync.pipelines p ON p.id = r.pipeline_id
WHERE p.code = 'td_orders_sync' AND r.stream = 'sales';

COMMENT ON VIEW orders_sync.td_sales IS 'Sales of the TD pipeline (stream sales).';

CREATE VIEW orders_sync.uc_gst AS
SELECT r.store_code, r.record_id, r.record_date, r.amount, r.payload, r.synced_at
FROM orders_sync.records r
JOIN orders_sync.pipelines p ON p.id = r.pipeline_id
WHERE p.code = 'uc_orders_sync' AND r.stream = 'gst';

COMMENT ON VIEW orders_sync.uc_gst IS 'GST records of the UC pipeline (stream gst), treated as order data.';
