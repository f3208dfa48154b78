"""pipeline.audit: masking of cardholder data and the hash-chained audit trail.

* :mod:`pipeline.audit.masking` — ``mask_pan`` (first 6 / last 4).
* :mod:`pipeline.audit.trail` — ``AuditTrail`` (append / verify), ``AuditEvent``,
  ``VerifyReport``.
"""
