"""Issuer input files: layouts as data, streaming parse, validation, sample files.

Modules (docs/INPUT.md describes the formats and the reason codes):

* :mod:`~pipeline.records.layout` - ``load_layout(name, config_dir) -> Layout``
* :mod:`~pipeline.records.issuers` - ``load_issuer(issuer_id, config_dir) -> IssuerConfig``
* :mod:`~pipeline.records.parse` - ``verify_file`` (batch checks, before any crypto) and
  ``iter_records`` (one ``RawRecord`` per detail line, bounded memory)
* :mod:`~pipeline.records.validate` - ``Validator(...).check(raw) -> CardRecord | Reject``
* :mod:`~pipeline.records.reasons` - ``RejectReason`` (stable codes R001..R090)
* :mod:`~pipeline.records.luhn` - ISO/IEC 7812-1 check digit
* :mod:`~pipeline.records.sample` - ``write_sample`` behind ``cardprep sample``
"""
