package tributary.bench;

import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.streams.processor.StateRestoreListener;

/**
 * Prints when Kafka Streams starts and ends restoring each store partition from its changelog, one line each on
 * stderr, for scripts/bench/restore (which deletes the state directory and times the restore that follows):
 *
 * <pre>
 * restore-start ms=EPOCH_MS store=NAME topic=CHANGELOG partition=P from=OFFSET to=OFFSET
 * restore-end ms=EPOCH_MS store=NAME topic=CHANGELOG partition=P restored=RECORDS
 * </pre>
 *
 * A run that restores nothing (a fresh state directory, as in the e2e bench) prints nothing.
 */
final class RestoreReport implements StateRestoreListener {
    @Override
    public void onRestoreStart(TopicPartition tp, String store, long startingOffset, long endingOffset) {
        System.err.printf("restore-start ms=%d store=%s topic=%s partition=%d from=%d to=%d%n",
                System.currentTimeMillis(), store, tp.topic(), tp.partition(), startingOffset, endingOffset);
    }

    @Override
    public void onBatchRestored(TopicPartition tp, String store, long batchEndOffset, long numRestored) {}

    @Override
    public void onRestoreEnd(TopicPartition tp, String store, long totalRestored) {
        System.err.printf("restore-end ms=%d store=%s topic=%s partition=%d restored=%d%n",
                System.currentTimeMillis(), store, tp.topic(), tp.partition(), totalRestored);
    }
}
