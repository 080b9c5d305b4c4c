"""Weight converters between seqjax and other frameworks (``seqjax.interop.torch``)."""
