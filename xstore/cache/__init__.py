"""Binary caches (`file://`, `http(s)://`, `s3://`) as stores: `base.BinaryCacheStore` over one small
file-transfer backend per kind, each imported only when a URL names it."""
