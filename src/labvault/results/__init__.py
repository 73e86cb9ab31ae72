"""Laboratory results (issue 8): what enters from the laboratory's system.

``hl7``: ORU^R01 parsing into typed values, ACK/NACK, MLLP framing, payload decoding.
``mllp``: the asyncio MLLP listener that answers each message, behind the ``ResultIntake``
seam (its in-memory twin, ``MemoryResultIntake``, serves the tests). The storage behind it
(deduplication on MSH-3/4/10, patient matching, sealing under the patient's key) comes next.
"""
