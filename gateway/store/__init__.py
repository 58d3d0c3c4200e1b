"""The durable buffer: the database, the reading record, and the group commit.

``db`` opens the database and migrates it; ``records`` is the one record a reading has;
``commit`` is the transaction of a group commit and the writer process it runs in (standard
library only: that process imports nothing else); ``committer`` queues verified packs, acks
them after their commit and runs the stages after it.
Imports nothing: the writer process imports ``gateway.store.commit`` alone.
"""
