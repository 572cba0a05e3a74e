/* The compare page: the accuracy/latency scatter of finished jobs (data in #points-data). */
"use strict";
Charts.scatter(document.getElementById("scatter"), JSON.parse(document.getElementById("points-data").textContent));
