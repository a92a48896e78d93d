package tributary.bench;

import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;

/** Settings and life cycle shared by the two Kafka Streams baselines. */
final class Streams {
    private Streams() {}

    /** Exactly-once v2, the given commit interval, one stream thread (the default), everything else default. */
    static Properties config(Args args) {
        Properties p = new Properties();
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, args.group);
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args.bootstrap);
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, Long.toString(args.commitMs));
        p.put(StreamsConfig.STATE_DIR_CONFIG, args.stateDir);
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        return p;
    }

    /**
     * Runs the topology until SIGTERM, then closes it cleanly; exits non-zero when a stream thread dies. Restores
     * from changelogs are reported on stderr ({@link RestoreReport}).
     */
    static void run(Topology topology, Properties config) throws InterruptedException {
        KafkaStreams streams = new KafkaStreams(topology, config);
        streams.setGlobalStateRestoreListener(new RestoreReport());
        CountDownLatch done = new CountDownLatch(1);
        int[] exit = {0};
        streams.setUncaughtExceptionHandler(e -> {
            System.err.println("stream thread failed: " + e);
            e.printStackTrace();
            exit[0] = 1;
            done.countDown();
            return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close();
            done.countDown();
        }));
        streams.start();
        done.await();
        if (exit[0] != 0) {
            streams.close();
            System.exit(exit[0]);
        }
    }
}
