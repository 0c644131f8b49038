-- Pages a server sent gzip-compressed are stored as sent (body_encoding 'gzip'), which spares the fetcher
-- compressing them again; pages sent uncompressed are still stored zlib-compressed.
ALTER TABLE pages DROP CONSTRAINT pages_body_encoding_check;
ALTER TABLE pages ADD CONSTRAINT pages_body_encoding_check CHECK (body_encoding IN ('zlib', 'gzip', 'identity'));
