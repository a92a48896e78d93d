package tributary.bench;

import java.time.Duration;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.WakeupException;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * The raw transactional pass-through: a plain consumer (read_committed, manual offsets) and a transactional producer
 * that copies every record, bytes unchanged, to the same partition of the output topic, and every commit interval
 * sends the consumed offsets into the transaction and commits it. No framework: the least any exactly-once
 * consume-produce job has to do. Runs until SIGTERM.
 */
public final class PassThrough {
    public static void main(String[] argv) throws Exception {
        Args args = new Args(argv);

        Properties c = new Properties();
        c.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, args.bootstrap);
        c.put(ConsumerConfig.GROUP_ID_CONFIG, args.group);
        c.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        c.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        c.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        c.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        c.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());

        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, args.bootstrap);
        p.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, args.group + "-txn");
        p.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        p.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, "lz4");
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());

        AtomicBoolean running = new AtomicBoolean(true);
        CountDownLatch stopped = new CountDownLatch(1);
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(c);
                KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(p)) {
            Runtime.getRuntime().addShutdownHook(new Thread(() -> {
                running.set(false);
                consumer.wakeup();
                try {
                    stopped.await();
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            }));
            producer.initTransactions();
            consumer.subscribe(args.topics());
            Map<TopicPartition, OffsetAndMetadata> positions = new HashMap<>();
            boolean open = false;
            long lastCommit = System.nanoTime();
            long interval = Duration.ofMillis(args.commitMs).toNanos();
            try {
                while (running.get()) {
                    ConsumerRecords<byte[], byte[]> records = consumer.poll(Duration.ofMillis(20));
                    if (!records.isEmpty() && !open) {
                        producer.beginTransaction();
                        open = true;
                    }
                    for (ConsumerRecord<byte[], byte[]> r : records) {
                        producer.send(new ProducerRecord<>(args.output, r.partition(), r.timestamp(), r.key(), r.value(), r.headers()));
                        positions.put(new TopicPartition(r.topic(), r.partition()), new OffsetAndMetadata(r.offset() + 1));
                    }
                    if (System.nanoTime() - lastCommit >= interval) {
                        if (open) {
                            producer.sendOffsetsToTransaction(positions, consumer.groupMetadata());
                            producer.commitTransaction();
                            positions.clear();
                            open = false;
                        }
                        // The next cycle gets its full interval, however long the commit took (as the Rust pass-through).
                        lastCommit = System.nanoTime();
                    }
                }
            } catch (WakeupException e) {
                // stopping
            }
            if (open) {
                producer.abortTransaction();
            }
        } finally {
            stopped.countDown();
        }
    }
}
