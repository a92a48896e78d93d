package tributary.bench;

import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Produced;

/**
 * Kafka Streams with exactly-once v2 that merges nothing: source topics to the output topic, bytes unchanged, no
 * state. What the framework costs before any work is done.
 */
public final class StreamsPassThrough {
    public static void main(String[] argv) throws Exception {
        Args args = new Args(argv);
        StreamsBuilder builder = new StreamsBuilder();
        builder.stream(args.topics(), Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()))
                .to(args.output, Produced.with(Serdes.ByteArray(), Serdes.ByteArray()));
        Streams.run(builder.build(), Streams.config(args));
    }
}
