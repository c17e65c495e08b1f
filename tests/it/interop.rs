//! (being written) Interop with PyPI oras and skopeo; S3 against s3s-fs.
