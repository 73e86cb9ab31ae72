"""Laboratory results: HL7 v2 ORU^R01 parsing and MLLP framing (issue 8).

Pure parsing lives here; the MLLP listener, deduplication, patient matching and storage are
wired by the ingestion service on top of these pieces.
"""
