<?php
// A streamed response: ?chunks= lines of ?size= bytes ("chunk I " padded with one letter),
// each flushed to the web server (a FastCGI record of its own) before a 1 ms pause, then "end".
$chunks = (int)($_GET['chunks'] ?? 0);
$size = (int)($_GET['size'] ?? 0);
header('Content-Type: text/plain');
for ($i = 0; $i < $chunks; $i++) {
    echo str_pad("chunk $i ", $size, chr(97 + $i % 26)), "\n";
    flush();
    usleep(1000);
}
echo "end\n";
