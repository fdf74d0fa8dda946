"""The driver (the seed's A server): plan, dispatch, watch, retry, report.

``campaign`` runs a campaign or resumes one (the stages); ``portions`` plans delivery
portions from the validated list as the queue needs them; ``loop`` is the one dispatch loop,
with ``push`` and ``pull`` strategies (``broker`` is pull mode's mailbox actor); ``settle``
turns outcomes into final counts and next attempts; ``fleet`` starts, watches, judges and
replaces the delivery servers; ``dispatch`` is the work queue and the Router seam; ``plan``
and ``sizing`` size capacity to a target time; ``progress`` the lines and bar an operator
watches.
"""
