"""The driver (the seed's A server): plan, dispatch, watch, retry, report.

``campaign`` runs a campaign or resumes one; ``portions`` plans delivery portions from the
validated list as the queue needs them; ``plan`` sizes capacity; ``dispatch`` is the work
queue and router seam; ``broker`` the mailbox actor of pull mode; ``progress`` the lines and
bar an operator watches.
"""
